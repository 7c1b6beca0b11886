"""An agent flow whose model calls are steps: killed mid-way, it resumes without re-asking the model.

``python examples/agent.py`` — uses a temporary journal.
"""

import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def child() -> None:
    sys.path.insert(0, HERE)
    import transparent_de

    transparent_de.install("agent_flows")
    from agent_flows.flows import ResearchAgent

    result = transparent_de.run(ResearchAgent().run, "how do durable flows work?", flow_id="agent-1")
    print(f"  answer: {result}", flush=True)
    # The first two model answers were replayed from the journal: only round 2 called the model.
    assert result["model_calls_this_process"] == (3 if not os.environ.get("AGENT_RESUMED") else 1), result


def main() -> int:
    if sys.argv[1:] == ["child"]:
        child()
        return 0
    db = os.path.join(tempfile.mkdtemp(prefix="tde-agent-"), "agent.db")
    env = dict(os.environ, TRANSPARENT_DE_DB=db)
    print("1) The agent thinks two rounds, then its process is killed:")
    p = subprocess.run([sys.executable, __file__, "child"], env=dict(env, AGENT_CRASH="1"))
    print("2) Run again with the same flow id: rounds 0 and 1 are replayed, round 2 asks the model:")
    q = subprocess.run([sys.executable, __file__, "child"], env=dict(env, AGENT_RESUMED="1"))
    ok = p.returncode == -signal.SIGKILL and q.returncode == 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

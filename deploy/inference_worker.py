"""The inference worker process: ``python -m deploy.inference_worker address=... path=... [backend= threads=
num_inference_steps= realtime_priority=]``. Loads the agent, answers ``infer`` with ``chunk`` until its parent exits.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import zmq

from deploy.agents import load_deploy_agent
from deploy.inference import set_realtime_priority
from deploy.protocol import decode, encode


def main(argv: list[str]) -> int:
    """Worker: connect to ``address``, load the agent, answer ``infer`` with ``chunk`` until the parent is gone."""
    args = dict(a.split("=", 1) for a in argv)
    parent = os.getppid()
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args["address"])
    steps = int(args["num_inference_steps"]) if "num_inference_steps" in args else None
    set_realtime_priority(int(args.get("realtime_priority", 0)), "inference worker")
    try:
        agent = load_deploy_agent(args["path"], args.get("backend", "auto"), int(args.get("threads", 1)), steps)
        n_action, action_dim = agent.n_action_steps, agent.shape_meta.action_dim
    # Report any load failure to the parent, which shows it; then exit.
    except Exception as e:
        sock.send(encode("error", code="internal", message=f"{type(e).__name__}: {e}"))
        time.sleep(0.5)
        return 1
    sock.send(
        encode("ready", n_obs_steps=int(agent.n_obs_steps), n_action_steps=int(n_action), action_dim=int(action_dim))
    )
    while os.getppid() == parent:
        if not sock.poll(200, zmq.POLLIN):
            continue
        data = sock.recv()
        while sock.poll(0, zmq.POLLIN):  # only the newest request matters; the older ones are answered as skipped
            data = sock.recv()
        try:
            msg = decode(data)
            t0 = time.monotonic()
            chunk = np.asarray(agent.predict_action(msg["obs"]), dtype=np.float32)
            latency = time.monotonic() - t0
            sock.send(encode("chunk", seq=msg["seq"], action=chunk.reshape(-1, chunk.shape[-1]), latency=latency))
        # The loop must learn why inference failed; it stops and reports it.
        except Exception as e:
            sock.send(encode("error", code="internal", message=f"{type(e).__name__}: {e}"))
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

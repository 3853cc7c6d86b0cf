"""Native engines (llama.cpp, Piper) run in supervised worker processes, out of the server.

Native code can crash the process it runs in (a build for another CPU dies with SIGILL on its
first inference; a bug segfaults), and Python code around it holds the GIL, stalling every call's
audio on the server's event loop. So each engine runs in worker processes instead:

- `worker`: the child side, `python -m <engine module> FD`; an engine implements `Engine`
  (load once, then run jobs that stream items back) and calls `worker.main`.
- `process`: the server's handle on one worker (spawn, pipe protocol, flow control, death).
- `pool`: a supervised pool of workers for one engine configuration, shared by every call
  (restart with backoff, `problem()` for /readyz).
"""

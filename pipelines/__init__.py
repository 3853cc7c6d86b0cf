"""The voice engine: audio, VAD, turn-taking, speech output and the models they run."""

import os

# onnxruntime 1.32 on Linux sends usage telemetry to Microsoft (it looks up
# mobile.events.data.microsoft.com when a session loads) unless this is set before it is first
# imported. A self-hosted call server must not phone home, and on a closed network the lookups
# only wait on DNS. Every model we run is loaded through this package, and worker processes
# inherit the environment. Set ORT_DISABLE_TELEMETRY=0 to allow it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

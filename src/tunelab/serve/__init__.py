"""`tunelab serve`: a local OpenAI-compatible HTTP server for finished runs (FastAPI + uvicorn).

    tunelab serve runs/spam runs/docqa-ko --port 8000

runs.py loads the RUN folders, app.py holds the routes, batching.py the bounded request queue
and its worker, auth.py the API key, limits.py the request limits, errors.py the OpenAI-style
error bodies, schemas.py and shapes.py the request and response bodies, metrics.py the counters
behind /metrics. The package is task-free: the models come from the task packages (a
classification run's `Classifier`, an SFT run's `tunelab.sft.stream.Generator`), handed in by
the command.
"""

"""The online recommender service: features -> retrieval -> ranking -> re-ranking -> exploration over HTTP.

`Recommender` (recommender.py) is the pipeline as a plain class; `create_app` (app.py) the FastAPI app;
`build_recommender` / `ServiceServer` (runner.py) wire and run them; settings in config.py.
"""

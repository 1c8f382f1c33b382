"""Online inference service of MRdIB: FastAPI over a verified artifact (never imports torch).

Modules: settings (environment), model_store (load/verify/swap/poll), recommender (scoring,
exclusion, explanation), cache (user state in Redis or in-process), events (stream + WAL +
replay), api (routes and app factory), metrics, middleware, towers (onnxruntime), index (FAISS).
"""

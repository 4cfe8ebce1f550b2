"""maskforge.models: networks, model loading from local files, and model training loops (`models/<learner>/`)."""

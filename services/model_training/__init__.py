"""Training of tagging models (the `train` extra). May import `services.model_serving.models` only;
model-serving never imports this package."""

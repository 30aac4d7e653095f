"""The AI Platform Prediction workload: model serving and jobs."""

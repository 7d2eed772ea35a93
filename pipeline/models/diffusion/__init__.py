"""Helpers shared by the diffusion pipelines: model loading and seeded noise.

Modules here import torch at the top but diffusers/transformers only inside functions, so that
the registry can import every pipeline cheaply when the server starts.
"""

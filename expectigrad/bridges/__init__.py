"""Run any optax ``GradientTransformation`` as a torch, TF1 or Keras optimizer.

Each bridge lives in its own module (``expectigrad.bridges.torch``,
``expectigrad.bridges.tf1``, ``expectigrad.bridges.keras``) and imports its
framework only when that module is imported.
"""

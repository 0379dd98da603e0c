"""persona.inference: the persona pack + a topic -> a finished explainer video."""

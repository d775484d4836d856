"""Rules: pure state machines fed (detections, frame timestamp); they emit RuleSignals, never do I/O."""

"""pingan pipeline: cameras → detections → tracks → rules → events."""

__version__ = "0.1.0"

"""tunelab: turn pretrained language models into specialists, offline by default.

Python API:
    import tunelab
    clf = tunelab.load("runs/spam")          # a finished run folder
    clf.predict(["WIN a free cruise now!"])  # -> [{"label": "spam", "probs": {...}}]
"""

from tunelab.version import __version__

__all__ = ["__version__", "load"]


def load(run_dir, device=None):
    """Load a finished run folder (classification) for prediction; see `tunelab.classify.predict`."""
    from tunelab.classify.predict import load_classifier

    return load_classifier(run_dir, device=device)

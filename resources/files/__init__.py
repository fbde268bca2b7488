"""Files on disk that a short-lived process trusts without re-reading: stamped checksums."""

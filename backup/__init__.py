"""Whole-system backup: layout capture, archive, manifest, verify, retention (issue [G])."""

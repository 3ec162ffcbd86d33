"""Detector: journal lines and other events × signatures → suspected problems."""

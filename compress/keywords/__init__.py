"""Keyword spotting on continuous audio: what a wake-word or command model is measured by on a phone.

A streaming student (``compress.models.streaming``) runs every hop of a microphone stream; its file follows
one I/O contract and one detection rule (``compress.export.common.streaming``). This package holds the task's
classes (``task``: keywords, ``_unknown_``, ``_silence_`` from a labelled audio data set) and what is measured
on streams: ``streams`` (test and validation streams built from labelled clips and background
audio, seeded, with the keyword spans recorded) and ``scoring`` (hits, misses and false accepts of a rule's
detections; false-reject rate, false accepts per hour with a Poisson interval and the hours behind it; the
DET curve over thresholds; the threshold chosen on validation streams under a false-accept budget).
"""

"""Baseline methods of the paper's comparison, each registered behind the common Method interface.

``liveportrait`` is a native port; the diffusion baselines run their own upstream code as subprocesses.
"""

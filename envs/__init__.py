"""Simulated benchmarks, scripted experts and the evaluation runner.

Import the submodule you need (``envs.metaworld.env``, ``envs.pointcloud``, ``envs.metaworld.expert``, ``envs.runner``,
``core.seeds``); this package imports nothing heavy itself, so ``import envs`` never starts mujoco or OpenGL.
"""

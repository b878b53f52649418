"""Simulated benchmarks, scripted experts and the evaluation runner.

Import the submodule you need (``envs.metaworld_env``, ``envs.pointcloud``, ``envs.experts``, ``envs.runner``,
``envs.seeds``); this package imports nothing heavy itself, so ``import envs`` never starts mujoco or OpenGL.
"""

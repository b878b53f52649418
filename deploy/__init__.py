"""Deployment: one-graph export, the real-time control loop, safety limits, the robot bridge, a simulated arm and
RGB-D point clouds. Wire protocol for robot drivers: ``docs/robot_protocol.md``."""

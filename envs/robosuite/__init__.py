"""robosuite Lift/Can/Square with robomimic's observation keys, waypoint experts and the robomimic HDF5 collector."""

"""ditf_calib: calibration data, activation statistics, massive-channel detection, Q/DQ INT8 graphs."""

"""Readers of keypoint-pair datasets for PCK (evaluate.py): each turns one layout into `Pair`s.

spair.py: SPair-71k's layout. ap10k.py: AP-10K's benchmark as GeoAware-SC prepares it. A new
dataset is one more reader returning `pairs.Pair`s (scored keypoints, images, threshold box).
"""

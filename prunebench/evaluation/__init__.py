"""Evaluation: YouTube-VIS and frame COCO AP, token accounting (PKR, IoI), executed-graph MACs, FPS."""

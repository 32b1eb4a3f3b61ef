"""Evaluation: token accounting (PKR), executed-graph MAC counting, and (later) VIS metrics."""

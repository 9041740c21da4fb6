//! A simulated NVIDIA GPU.

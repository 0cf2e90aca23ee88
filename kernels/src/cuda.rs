//! CUDA path (placeholder).

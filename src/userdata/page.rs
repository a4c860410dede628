//! The generator page (placeholder).

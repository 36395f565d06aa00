//! Resilience decorators: retry, timeouts, mid-stream recovery and fallback.

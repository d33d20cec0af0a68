//! Static payloads shared by tools, resources and prompts.

/// A 1x1 red pixel PNG.
pub const PNG_1X1_RED_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

/// A 16-sample, 8 kHz, mono, 16-bit PCM WAV file containing silence.
pub const WAV_SILENCE_B64: &str =
    "UklGRkQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YSAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";

pub const SIMPLE_TEXT: &str = "This is a simple text response for testing.";
pub const ERROR_TEXT: &str = "This tool intentionally returns an error for testing";
pub const STATIC_TEXT: &str = "This is the content of the static text resource.";
pub const EMBEDDED_TEXT: &str = "This is an embedded resource content.";

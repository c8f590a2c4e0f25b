//! Session recording (asciicast v2).

//! The build log a customer reads: kiln's own lines (`[kiln] …`) between
//! the tools' output, capped so a flood cannot exhaust memory.

use std::fmt::Write;
use std::time::{Duration, Instant};

/// Most bytes a build log keeps (the sandbox caps the compiler's part
/// separately).
pub const MAX_LOG_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug)]
pub struct BuildLog {
    text: String,
    truncated: bool,
    started: Instant,
}

impl Default for BuildLog {
    fn default() -> Self {
        Self {
            text: String::new(),
            truncated: false,
            started: Instant::now(),
        }
    }
}

impl BuildLog {
    /// A line of kiln's own.
    pub fn kiln(&mut self, line: impl AsRef<str>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let line = format!("[kiln {elapsed:7.2}s] {}\n", line.as_ref());
        self.append(&line);
    }

    /// Output of a tool, as is.
    pub fn output(&mut self, text: &str) {
        self.append(text);
        if !text.is_empty() && !text.ends_with('\n') {
            self.append("\n");
        }
    }

    fn append(&mut self, text: &str) {
        if self.truncated {
            return;
        }
        let room = MAX_LOG_BYTES.saturating_sub(self.text.len());
        if text.len() <= room {
            self.text.push_str(text);
            return;
        }
        self.text.push_str(kiln_domain::text::cap(text, room));
        let _ = write!(
            self.text,
            "\n[kiln: log truncated at {MAX_LOG_BYTES} bytes]\n"
        );
        self.truncated = true;
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// Milliseconds of a duration, for the stage timings.
pub fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_truncated_with_a_marker() {
        let mut log = BuildLog::default();
        log.kiln("start");
        let chunk = "x".repeat(64 * 1024);
        for _ in 0..100 {
            log.output(&chunk);
        }
        assert!(log.text().len() < MAX_LOG_BYTES + 100);
        assert!(
            log.text()
                .ends_with(&format!("[kiln: log truncated at {MAX_LOG_BYTES} bytes]\n"))
        );
        log.kiln("after");
        assert!(!log.text().contains("after"));
    }

    /// The compiler's output quotes the customer's code: multibyte text
    /// past the cap, at every alignment, is cut on a character boundary.
    #[test]
    fn multibyte_text_past_the_cap_is_cut_on_a_character_boundary() {
        for shift in 0..4 {
            let mut log = BuildLog::default();
            log.output(&"x".repeat(shift));
            let flood = "🦀é日".repeat(MAX_LOG_BYTES / 4);
            log.output(&flood);
            let text = log.text();
            let marker = format!("\n[kiln: log truncated at {MAX_LOG_BYTES} bytes]\n");
            let kept = text.strip_suffix(&marker).expect("the marker ends the log");
            assert!(kept.len() <= MAX_LOG_BYTES && kept.len() > MAX_LOG_BYTES - 4);
            let lead = if shift > 0 { shift + 1 } else { 0 };
            assert!(flood.starts_with(&kept[lead..]));
        }
    }
}

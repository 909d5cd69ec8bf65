//! Stop strings over streamed text.
//!
//! Invariants: text handed out by [`StopMatcher::push`] never contains a stop string nor ends
//! with a prefix of one (that tail is held back until the next piece decides it); once a stop
//! string is found, everything from its first byte on is discarded. Held text is always a
//! suffix that starts on a `char` boundary, so pieces stay valid UTF-8.

/// What to do with a piece of generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send this text (possibly empty) and keep going.
    Emit(String),
    /// A stop string matched: send this text (what preceded the match) and end the generation.
    Stop(String),
}

/// Finds the earliest of a few stop strings in text that arrives piece by piece.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds a piece of text; returns what can be sent now.
    pub(crate) fn push(&mut self, piece: &str) -> Step {
        if self.stops.is_empty() {
            return Step::Emit(piece.to_owned());
        }
        self.held.push_str(piece);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            self.held.truncate(at);
            return Step::Stop(std::mem::take(&mut self.held));
        }
        // Hold back the longest suffix that could still grow into a stop string.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = self.held.get(i..).unwrap_or_default();
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep_from);
        Step::Emit(std::mem::replace(&mut self.held, rest))
    }

    /// The end of the text: what was held back is not a stop string after all.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            match m.push(p) {
                Step::Emit(t) => out.push(t),
                Step::Stop(t) => {
                    out.push(t);
                    return (out, true);
                }
            }
        }
        out.push(m.finish());
        (out, false)
    }

    #[test]
    fn without_stops_everything_passes_through() {
        let (out, stopped) = run(&[], &["a", "b"]);
        assert_eq!(out, ["a", "b", ""]);
        assert!(!stopped);
    }

    #[test]
    fn a_stop_split_across_pieces_is_never_emitted() {
        let (out, stopped) = run(&["END"], &["hello E", "N", "D more"]);
        assert!(stopped);
        assert_eq!(out, ["hello ", "", ""]);
        assert_eq!(out.concat(), "hello ");
    }

    #[test]
    fn a_false_start_is_released_when_disambiguated() {
        let (out, stopped) = run(&["END"], &["x E", "Nx", "y"]);
        assert!(!stopped);
        assert_eq!(out, ["x ", "ENx", "y", ""]);
    }

    #[test]
    fn a_held_prefix_is_released_at_the_end() {
        let (out, stopped) = run(&["END"], &["abc EN"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "abc EN");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (out, stopped) = run(&["world", "lo w"], &["hello world"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hel");
    }

    #[test]
    fn multibyte_text_is_held_on_char_boundaries() {
        let (out, stopped) = run(&["é!"], &["caf", "é", "?"]);
        assert!(!stopped);
        assert_eq!(out, ["caf", "", "é?", ""]);
        let (out, stopped) = run(&["é!"], &["café", "!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "caf");
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let (out, stopped) = run(&[""], &["abc"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "abc");
    }
}

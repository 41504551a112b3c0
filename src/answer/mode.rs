//! How a reader answers: a quote copied from the evidence, free text, or the one a rule picks
//! for the question.

use std::fmt;
use std::str::FromStr;

/// How the reader answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerMode {
    /// Greedy decoding constrained to a verbatim substring of the evidence.
    Quote,
    /// Free greedy decoding; each sentence cites the evidence piece it overlaps most.
    #[default]
    Free,
    /// Quote or free, by [`AnswerMode::for_question`].
    Auto,
}

/// First words of questions answered yes or no: no quote can say that.
const YES_NO_OPENINGS: [&str; 16] = [
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "has", "have", "had", "will",
    "would", "should", "am",
];

impl AnswerMode {
    /// Returns the mode a question is answered in: `auto` becomes `free` for yes/no questions
    /// (opening with an auxiliary verb) and `quote` for the rest; the others stay.
    pub fn for_question(self, question: &str) -> AnswerMode {
        match self {
            AnswerMode::Auto if is_yes_no(question) => AnswerMode::Free,
            AnswerMode::Auto => AnswerMode::Quote,
            other => other,
        }
    }

    /// Returns the mode's name as flags and reports write it.
    pub fn name(self) -> &'static str {
        match self {
            AnswerMode::Quote => "quote",
            AnswerMode::Free => "free",
            AnswerMode::Auto => "auto",
        }
    }
}

/// Whether a question asks for yes or no (it opens with an auxiliary verb).
pub fn is_yes_no(question: &str) -> bool {
    let first = question
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    YES_NO_OPENINGS.contains(&first.as_str())
}

impl fmt::Display for AnswerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AnswerMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quote" => Ok(AnswerMode::Quote),
            "free" => Ok(AnswerMode::Free),
            "auto" => Ok(AnswerMode::Auto),
            other => Err(format!("unknown answer mode `{other}` (quote, free, auto)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_quotes_unless_the_question_asks_yes_or_no() {
        let auto = AnswerMode::Auto;
        assert_eq!(
            auto.for_question("Who directed Ed Wood?"),
            AnswerMode::Quote
        );
        assert_eq!(
            auto.for_question("Were Scott Derrickson and Ed Wood of the same nationality?"),
            AnswerMode::Free
        );
        assert_eq!(auto.for_question("  \"Is it red?\""), AnswerMode::Free);
        assert_eq!(AnswerMode::Quote.for_question("Is it?"), AnswerMode::Quote);
        assert_eq!(AnswerMode::Free.for_question("Who?"), AnswerMode::Free);
        for m in [AnswerMode::Quote, AnswerMode::Free, AnswerMode::Auto] {
            assert_eq!(m.name().parse::<AnswerMode>().unwrap(), m);
        }
        assert!("Quote"
            .parse::<AnswerMode>()
            .unwrap_err()
            .contains("quote, free, auto"));
    }
}

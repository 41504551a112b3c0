//! When a reader says "not in the evidence": a signal of its own and a threshold on it,
//! given or calibrated per reader and signal (docs/eval.md, "Not in the evidence").

use std::fmt;
use std::str::FromStr;

use crate::model::Model;

/// The abstention thresholds calibrated per reader (its GGUF `general.name`) and signal.
const CALIBRATED: [(&str, AbstainSignal, f32); 0] = [];

/// Which of the reader's own signals decides whether it abstains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbstainSignal {
    /// The log-probability of the best quote's first token, read from the prefill's logits.
    #[default]
    Quote,
    /// The log-odds of yes against no when the reader is asked, after the evidence and the
    /// question, whether the evidence states the answer ([`super::support`]).
    Support,
}

impl AbstainSignal {
    /// Returns the signal's name as flags and reports write it.
    pub fn name(self) -> &'static str {
        match self {
            AbstainSignal::Quote => "quote",
            AbstainSignal::Support => "support",
        }
    }

    /// Refuses a threshold the signal cannot be below in a useful way: a log-probability of
    /// the quote's first token is never above 0, so a positive one would abstain on everything
    /// (`-inf`, never abstaining, is a threshold calibration may choose).
    pub fn check(self, threshold: f32) -> Result<(), String> {
        match self {
            _ if threshold.is_nan() => Err("NaN is not a threshold".to_string()),
            AbstainSignal::Quote if threshold > 0.0 => Err(format!(
                "{threshold} is above 0: the quote signal is a log-probability (a number <= 0)"
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for AbstainSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AbstainSignal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quote" => Ok(AbstainSignal::Quote),
            "support" => Ok(AbstainSignal::Support),
            other => Err(format!(
                "unknown abstention signal `{other}` (quote, support)"
            )),
        }
    }
}

/// A rule of abstention: below this value of this signal the reader says "not in the
/// evidence".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// The signal compared.
    pub signal: AbstainSignal,
    /// The value below which the reader abstains.
    pub below: f32,
}

impl Threshold {
    /// Whether the signal's `value` makes the reader abstain; without a value (no evidence,
    /// no token of the evidence to quote) it always does.
    pub fn abstains(self, value: Option<f32>) -> bool {
        value.is_none_or(|v| v < self.below)
    }
}

/// When a reader abstains.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Abstain {
    /// Below the reader's calibrated threshold of the signal; never for a reader without one.
    #[default]
    Calibrated,
    /// Never.
    Never,
    /// Below this value of the signal.
    Below(f32),
}

impl Abstain {
    /// Returns the rule for `reader` on `signal` (`None`: never abstain).
    pub fn threshold(self, reader: &Model, signal: AbstainSignal) -> Option<Threshold> {
        let below = match self {
            Abstain::Calibrated => CALIBRATED
                .iter()
                .find(|(name, s, _)| *name == reader.config().name && *s == signal)
                .map(|&(_, _, t)| t),
            Abstain::Never => None,
            Abstain::Below(t) => Some(t),
        };
        below.map(|below| Threshold { signal, below })
    }

    /// Refuses a given threshold that `signal` cannot use ([`AbstainSignal::check`]).
    pub fn check(self, signal: AbstainSignal) -> Result<(), String> {
        match self {
            Abstain::Below(t) => signal.check(t),
            Abstain::Calibrated | Abstain::Never => Ok(()),
        }
    }
}

impl FromStr for Abstain {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "calibrated" => Ok(Abstain::Calibrated),
            "never" => Ok(Abstain::Never),
            other => match other.parse::<f32>() {
                Ok(t) if t.is_finite() => Ok(Abstain::Below(t)),
                _ => Err(format!(
                    "`{other}` is not calibrated, never or a threshold of the signal (a number)"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_thresholds_parse_and_refuse_by_name() {
        for s in [AbstainSignal::Quote, AbstainSignal::Support] {
            assert_eq!(s.name().parse::<AbstainSignal>().unwrap(), s);
        }
        let err = "attention".parse::<AbstainSignal>().unwrap_err();
        assert!(
            err.contains("`attention`") && err.contains("quote, support"),
            "{err}"
        );
        assert_eq!("never".parse::<Abstain>().unwrap(), Abstain::Never);
        assert_eq!("-1.5".parse::<Abstain>().unwrap(), Abstain::Below(-1.5));
        assert_eq!("2".parse::<Abstain>().unwrap(), Abstain::Below(2.0));
        for bad in ["often", "NaN", "inf", ""] {
            let err = bad.parse::<Abstain>().unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        // Log-odds may be positive; a log-probability may not.
        assert_eq!(Abstain::Below(2.0).check(AbstainSignal::Support), Ok(()));
        let err = Abstain::Below(2.0).check(AbstainSignal::Quote).unwrap_err();
        assert!(err.contains("above 0") && err.contains("quote"), "{err}");
        assert_eq!(Abstain::Below(-0.5).check(AbstainSignal::Quote), Ok(()));
        assert_eq!(Abstain::Calibrated.check(AbstainSignal::Quote), Ok(()));
        assert_eq!(AbstainSignal::Quote.check(f32::NEG_INFINITY), Ok(()));
        assert!(AbstainSignal::Support.check(f32::NAN).is_err());
    }
}

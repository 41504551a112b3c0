//! One attention head of the model, named `layer.head`: the unit the retrieval heads are
//! chosen in (`eval heads`), re-ranking reads, and a per-head SAE set is trained for.

use std::fmt;
use std::str::FromStr;

/// A query head at a layer, written `layer.head` (`18.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RetrievalHead {
    /// The layer.
    pub layer: usize,
    /// The query head within the layer.
    pub head: usize,
}

impl RetrievalHead {
    /// Returns the KV head this query head reads in a model of `group` query heads per KV
    /// head.
    pub fn kv_head(self, group: usize) -> usize {
        self.head / group.max(1)
    }
}

impl fmt::Display for RetrievalHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.layer, self.head)
    }
}

impl FromStr for RetrievalHead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a layer.head pair such as 8.3");
        let (l, h) = s.trim().split_once('.').ok_or_else(bad)?;
        Ok(Self {
            layer: l.parse().map_err(|_| bad())?,
            head: h.parse().map_err(|_| bad())?,
        })
    }
}

impl serde::Serialize for RetrievalHead {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RetrievalHead {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_read_and_write_as_layer_dot_head() {
        let h: RetrievalHead = "18.7".parse().unwrap();
        assert_eq!(h, RetrievalHead { layer: 18, head: 7 });
        assert_eq!(h.to_string(), "18.7");
        assert_eq!(h.kv_head(3), 2);
        assert_eq!(serde_json::to_string(&h).unwrap(), "\"18.7\"");
        assert_eq!(
            serde_json::from_str::<RetrievalHead>("\"3.0\"")
                .unwrap()
                .layer,
            3
        );
        for bad in ["18", "a.1", "1.b", "", "1.2.3"] {
            assert!(bad.parse::<RetrievalHead>().is_err(), "{bad}");
        }
    }
}

//! Errors of answering.

use thiserror::Error;

use crate::model::ModelError;

/// What can go wrong while answering from evidence.
#[derive(Debug, Error)]
pub enum AnswerError {
    /// The prompt and the answer would not fit the model's window.
    #[error(
        "the prompt ({prompt_tokens} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the \
         model's window of {context}; lower the budget or max_new_tokens"
    )]
    TooLong {
        /// Tokens of the prompt with its evidence.
        prompt_tokens: usize,
        /// Tokens asked for.
        max_new_tokens: usize,
        /// The model's window.
        context: usize,
    },
    /// The support signal's turn would not fit the reader's window after the prompt.
    #[error(
        "the prompt ({prompt_tokens} tokens) plus the support signal's turn ({turn_tokens}) \
         exceeds the reader's window of {context}; lower the budget or abstain by the quote signal"
    )]
    NoRoomToVerify {
        /// Tokens of the prompt with its evidence.
        prompt_tokens: usize,
        /// Tokens of the verification turn.
        turn_tokens: usize,
        /// The reader's window.
        context: usize,
    },
    /// The reader's vocabulary spells neither yes nor no as one token.
    #[error("the reader's vocabulary has no single token for yes or for no: the support signal needs both")]
    NoYesNo,
    /// `max_new_tokens` is zero or over the limit.
    #[error("invalid max_new_tokens: {0}")]
    MaxNewTokens(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Result of the answer layer.
pub type Result<T, E = AnswerError> = std::result::Result<T, E>;

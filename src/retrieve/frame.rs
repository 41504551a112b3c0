//! The prompt frame shared by the question's retrieval pass and the answer.
//!
//! The question runs through the model in the same frame the answer is generated in, only
//! without the evidence, so its query projections are the ones the model would attend with.

/// The system turn of every answer prompt.
pub const SYSTEM: &str = "You answer questions from the numbered evidence you are given. \
Answer briefly, and cite the evidence you used as [n].";

/// Returns the user turn: the evidence (if any) and the question.
pub fn user_turn(context: Option<&str>, question: &str) -> String {
    match context {
        Some(c) => format!("Evidence:\n{c}\n\nQuestion: {question}"),
        None => format!("Question: {question}"),
    }
}

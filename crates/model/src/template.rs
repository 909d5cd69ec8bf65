//! The model's chat template (`tokenizer.chat_template`, Jinja) rendered with minijinja.
//!
//! Rendered like Hugging Face's `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on,
//! Python string/dict methods available (minijinja-contrib's pycompat), `raise_exception`
//! defined, and `messages`, `add_generation_prompt`, `bos_token`, `eos_token` in the context.

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::Serialize;

/// Errors of chat-template rendering.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The model carries no `tokenizer.chat_template`.
    #[error("the model has no chat template (tokenizer.chat_template); use a raw prompt instead")]
    Missing,
    /// The template does not parse or failed while rendering.
    #[error("chat template: {0}")]
    Render(#[from] JinjaError),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the token texts exposed as `bos_token`/`eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// Renders a conversation; `add_generation_prompt` opens the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("chat")?;
        Ok(tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })?)
    }

    /// One user turn followed by the assistant's prompt: what `generate --chat` sends.
    pub fn render_user_prompt(&self, prompt: &str) -> Result<String, TemplateError> {
        self.render(&[ChatMessage::new("user", prompt)], true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_python_methods_and_trims_blocks() -> Result<(), TemplateError> {
        let src = "{% for m in messages %}\n{{ m['role'].upper() }}: {{ m.content.strip() }}\n{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>")?;
        let out = t.render(&[ChatMessage::new("user", " hi ")], false)?;
        assert_eq!(out, "USER: hi\n");
        Ok(())
    }

    #[test]
    fn raise_exception_is_an_error() -> Result<(), TemplateError> {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "")?;
        let err = t.render(&[], false).expect_err("raises");
        assert!(err.to_string().contains("no system role"), "{err}");
        Ok(())
    }
}

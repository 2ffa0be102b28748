//! Rendering a step's templates: each one in an isolated, memory-capped renderer (see
//! `oa_template::isolated`), capped in size, and refused when it renders a NUL.

use oa_template::isolated::IsolatedRenderer;
use serde_json::{Map, Value};

use crate::providers::StepError;

pub struct Templates {
    renderer: IsolatedRenderer,
    /// Most bytes one template may render.
    max_rendered_bytes: usize,
}

impl Templates {
    pub fn new(renderer: IsolatedRenderer, max_rendered_bytes: usize) -> Templates {
        Templates { renderer, max_rendered_bytes }
    }

    pub async fn render(&self, text: &str, context: &Value) -> Result<String, StepError> {
        let rendered = self
            .renderer
            .render(text, context, self.max_rendered_bytes)
            .await
            .map_err(|e| StepError::new("template_error", format!("{:?}: {e}", excerpt(text))))?;
        if rendered.contains('\0') {
            let error = format!("{:?} renders a NUL character (\\u0000)", excerpt(text));
            return Err(StepError::new("template_error", error));
        }
        Ok(rendered)
    }

    pub async fn render_optional(
        &self,
        text: Option<&str>,
        context: &Value,
    ) -> Result<Option<String>, StepError> {
        match text {
            Some(text) => self.render(text, context).await.map(Some),
            None => Ok(None),
        }
    }

    pub async fn render_all(&self, texts: &[String], context: &Value) -> Result<Vec<String>, StepError> {
        let mut rendered = Vec::with_capacity(texts.len());
        for text in texts {
            rendered.push(self.render(text, context).await?);
        }
        Ok(rendered)
    }

    /// Renders every string value of `map`; other values are kept as they are.
    pub async fn render_map(&self, map: &Map<String, Value>, context: &Value) -> Result<Value, StepError> {
        let mut out = Map::new();
        for (key, value) in map {
            let rendered = match value {
                Value::String(text) => Value::String(self.render(text, context).await?),
                other => other.clone(),
            };
            out.insert(key.clone(), rendered);
        }
        Ok(Value::Object(out))
    }

    /// Evaluates a step's `when` condition.
    pub async fn evaluate(&self, condition: &str, context: &Value) -> Result<bool, StepError> {
        self.renderer
            .evaluate(condition, context)
            .await
            .map_err(|error| StepError::new("invalid_condition", format!("when {condition:?}: {error}")))
    }
}

/// The start of a template, to name it in an error without quoting all of it.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
pub(crate) fn for_tests() -> Templates {
    Templates::new(IsolatedRenderer::new(256 * 1024 * 1024, 2), 4096)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn long_templates_are_named_by_their_start() {
        assert_eq!(excerpt("short"), "short");
        let long = "x".repeat(200);
        assert_eq!(excerpt(&long), format!("{}...", "x".repeat(120)));
    }

    #[tokio::test]
    async fn renders_refuses_nul_and_caps_size() {
        let templates = for_tests();
        let context = json!({"event_payload": {"name": "disk"}});
        assert_eq!(templates.render("{{ event_payload.name }} full", &context).await.unwrap(), "disk full");
        let nul = templates.render("a{{ '\\u0000' }}b", &context).await.unwrap_err();
        assert_eq!(nul.code, "template_error");
        let big = templates.render("{% for i in range(5000) %}xx{% endfor %}", &context).await.unwrap_err();
        assert_eq!(big.code, "template_error");
        assert!(templates.evaluate("event_payload.name == 'disk'", &context).await.unwrap());
        assert_eq!(templates.evaluate("nonsense ==", &context).await.unwrap_err().code, "invalid_condition");
    }
}

//! An org's settings: who the plane talks to on its behalf. Contacts (on-call numbers, the
//! security mailbox, account managers, finance) and the org's own Slack and Teams incoming
//! webhooks. System agents and templates name them (`{{ org.contacts.on_call_sms }}`) instead of
//! carrying people of their own, and approval links go to these contacts only.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Contact lists an org may set, and what each holds.
pub const CONTACTS: [(&str, ContactKind); 4] = [
    ("on_call_sms", ContactKind::Phone),
    ("security_email", ContactKind::Email),
    ("account_manager_email", ContactKind::Email),
    ("finance_email", ContactKind::Email),
];
/// The org's own incoming webhooks, by channel.
pub const WEBHOOKS: [&str; 2] = ["slack", "teams"];
const MAX_PER_CONTACT: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactKind {
    Phone,
    Email,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrgSettings {
    #[serde(default)]
    pub contacts: Map<String, Value>,
    #[serde(default)]
    pub webhooks: Map<String, Value>,
}

/// One failing path of a settings document and why.
pub type Problem = (String, String);

fn valid_phone(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or("");
    (7..=15).contains(&digits.len()) && !digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit())
}

fn valid_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else { return false };
    text.len() <= 320
        && !local.is_empty()
        && domain.contains('.')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',')
}

impl OrgSettings {
    /// Checks a settings document: known contact lists of valid numbers or addresses, and http(s)
    /// webhook URLs (which are still checked by the egress policy at every send).
    pub fn parse(input: &Value) -> Result<OrgSettings, Vec<Problem>> {
        let mut problems = Vec::new();
        let Some(object) = input.as_object() else {
            return Err(vec![(String::new(), "settings are a JSON object".into())]);
        };
        for key in object.keys().filter(|k| !["contacts", "webhooks"].contains(&k.as_str())) {
            problems.push((key.clone(), "unknown section; settings have contacts and webhooks".into()));
        }
        let mut settings = OrgSettings::default();
        match object.get("contacts") {
            None => {}
            Some(Value::Object(contacts)) => {
                for (name, value) in contacts {
                    let path = format!("contacts.{name}");
                    let Some((_, kind)) = CONTACTS.iter().find(|(known, _)| known == name) else {
                        let known: Vec<&str> = CONTACTS.iter().map(|(k, _)| *k).collect();
                        problems.push((path, format!("unknown contact list; use {}", known.join(", "))));
                        continue;
                    };
                    let Some(entries) = value.as_array().filter(|e| e.len() <= MAX_PER_CONTACT) else {
                        problems
                            .push((path, format!("a contact list has at most {MAX_PER_CONTACT} entries")));
                        continue;
                    };
                    for (index, entry) in entries.iter().enumerate() {
                        let ok = entry.as_str().is_some_and(|text| match kind {
                            ContactKind::Phone => valid_phone(text),
                            ContactKind::Email => valid_email(text),
                        });
                        if !ok {
                            let what = match kind {
                                ContactKind::Phone => "a phone number in E.164 form, such as +15551234567",
                                ContactKind::Email => "an email address",
                            };
                            problems.push((format!("{path}[{index}]"), format!("each entry is {what}")));
                        }
                    }
                    settings.contacts.insert(name.clone(), value.clone());
                }
            }
            Some(_) => problems.push(("contacts".into(), "contacts is an object of lists".into())),
        }
        match object.get("webhooks") {
            None => {}
            Some(Value::Object(webhooks)) => {
                for (channel, value) in webhooks {
                    let path = format!("webhooks.{channel}");
                    if !WEBHOOKS.contains(&channel.as_str()) {
                        problems.push((path, format!("webhooks are {}", WEBHOOKS.join(" and "))));
                        continue;
                    }
                    let ok = value.as_str().is_some_and(|url| {
                        url::Url::parse(url)
                            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    });
                    if !ok {
                        problems.push((path, "a webhook is an https URL".into()));
                    }
                    settings.webhooks.insert(channel.clone(), value.clone());
                }
            }
            Some(_) => problems.push(("webhooks".into(), "webhooks is an object of URLs".into())),
        }
        if problems.is_empty() { Ok(settings) } else { Err(problems) }
    }

    /// A contact list (empty when not set).
    pub fn contacts(&self, name: &str) -> Vec<String> {
        self.contacts
            .get(name)
            .and_then(Value::as_array)
            .map(|entries| entries.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Whether `recipient` is one of the org's contacts, in any list.
    pub fn is_contact(&self, recipient: &str) -> bool {
        CONTACTS.iter().any(|(name, _)| self.contacts(name).iter().any(|c| c == recipient))
    }

    pub fn webhook(&self, channel: &str) -> Option<&str> {
        self.webhooks.get(channel).and_then(Value::as_str)
    }

    /// The settings as the API shows them: webhook URLs keep only their scheme and host.
    pub fn masked(&self) -> Value {
        let webhooks: Map<String, Value> = self
            .webhooks
            .iter()
            .map(|(channel, url)| (channel.clone(), json!(mask(url.as_str().unwrap_or("")))))
            .collect();
        json!({ "contacts": self.contacts, "webhooks": webhooks })
    }

    /// `update` applied over `self`: each section given replaces the stored one; a webhook sent
    /// back in its masked form keeps the stored URL.
    pub fn merged(&self, update: OrgSettings, sections: &[&str]) -> OrgSettings {
        let mut merged = self.clone();
        if sections.contains(&"contacts") {
            merged.contacts = update.contacts;
        }
        if sections.contains(&"webhooks") {
            merged.webhooks = update
                .webhooks
                .into_iter()
                .map(|(channel, url)| {
                    let kept = self
                        .webhooks
                        .get(&channel)
                        .filter(|stored| mask(stored.as_str().unwrap_or("")) == url);
                    (channel, kept.cloned().unwrap_or(url))
                })
                .collect();
        }
        merged
    }
}

/// `https://hooks.slack.com/services/T0/B0/secret` shows as `https://hooks.slack.com/***`.
pub fn mask(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => format!("{}://{}/***", parsed.scheme(), parsed.host_str().unwrap_or("")),
        Err(_) => "***".into(),
    }
}

/// The contact list a recipient template names, when it is exactly `{{ org.contacts.<name> }}`.
pub fn contact_reference(recipient: &str) -> Option<&str> {
    let inner = recipient.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let name = inner.strip_prefix("org.contacts.")?;
    CONTACTS.iter().map(|(known, _)| *known).find(|known| *known == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_masked_and_merged() {
        let input = json!({"contacts": {"on_call_sms": ["+15550100200"], "security_email": ["sec@acme.example"]},
                           "webhooks": {"slack": "https://hooks.slack.com/services/T0/B0/secret"}});
        let settings = OrgSettings::parse(&input).unwrap();
        assert_eq!(settings.contacts("on_call_sms"), ["+15550100200"]);
        assert!(settings.is_contact("sec@acme.example") && !settings.is_contact("+15559999999"));
        assert_eq!(settings.masked()["webhooks"]["slack"], "https://hooks.slack.com/***");
        let back = OrgSettings::parse(&settings.masked()).unwrap();
        let merged = settings.merged(back, &["contacts", "webhooks"]);
        assert_eq!(merged.webhook("slack"), Some("https://hooks.slack.com/services/T0/B0/secret"));

        let bad = json!({"contacts": {"on_call_sms": ["555-0100"], "pager": []}, "webhooks": {"slack": "ftp://x"}, "x": 1});
        let problems: Vec<String> =
            OrgSettings::parse(&bad).unwrap_err().into_iter().map(|(p, _)| p).collect();
        for path in ["contacts.on_call_sms[0]", "contacts.pager", "webhooks.slack", "x"] {
            assert!(problems.iter().any(|p| p == path), "{path} in {problems:?}");
        }
    }

    #[test]
    fn only_a_bare_contact_reference_names_a_contact_list() {
        assert_eq!(contact_reference("{{ org.contacts.on_call_sms }}"), Some("on_call_sms"));
        assert_eq!(contact_reference("{{org.contacts.security_email}}"), Some("security_email"));
        assert_eq!(contact_reference("{{ org.contacts.pager }}"), None);
        assert_eq!(contact_reference("{{ event_payload.phone }}"), None);
        assert_eq!(contact_reference("+15550100200"), None);
    }
}

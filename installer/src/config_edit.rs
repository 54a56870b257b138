//! The few edits the installer makes to a role's TOML config, done with `toml_edit` so the
//! operator's comments, order and layout survive. The installer does not know the roles' config
//! types (it must not depend on the role crates); it knows only the key names below.

use toml_edit::{DocumentMut, Item, TableLike, Value};

/// The key naming the directory for keys and buffers, wherever it sits in the file.
pub const DATA_DIR_KEY: &str = "data_dir";
/// The table holding the uplink settings of hubs and connectors.
pub const UPLINK_TABLE: &str = "uplink";
/// `[uplink] cloud = URL`: the cloud's base URL.
pub const CLOUD_KEY: &str = "cloud";
/// `[uplink] ca_file = PATH`: the authority the cloud's certificate must chain to.
pub const CA_FILE_KEY: &str = "ca_file";

fn parse(text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>().map_err(|e| format!("not valid TOML: {}", e.to_string().trim()))
}

/// Sets every `data_dir` key of the config to `dir` (adding one at the top level when there is
/// none, since the unit lets the service write nowhere else). Returns the new text and the first
/// previous value, if there was one.
pub fn set_data_dir(text: &str, dir: &str) -> Result<(String, Option<String>), String> {
    let mut doc = parse(text)?;
    let mut previous = Vec::new();
    set_everywhere(doc.as_table_mut(), DATA_DIR_KEY, dir, &mut previous);
    if previous.is_empty() {
        doc.insert(DATA_DIR_KEY, toml_edit::value(dir));
    }
    Ok((doc.to_string(), previous.into_iter().next()))
}

fn set_everywhere(table: &mut dyn TableLike, key: &str, new: &str, previous: &mut Vec<String>) {
    for (k, item) in table.iter_mut() {
        if k.get() == key {
            if let Some(v) = item.as_value_mut() {
                previous.push(v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                replace_keeping_decor(v, new);
            }
        } else if let Some(inner) = item.as_table_like_mut() {
            set_everywhere(inner, key, new, previous);
        }
    }
}

fn replace_keeping_decor(v: &mut Value, new: &str) {
    let decor = v.decor().clone();
    *v = Value::from(new);
    *v.decor_mut() = decor;
}

/// Where a config names the cloud: a hub's `[uplink] cloud`, or a connector's `[cloud] url` (a
/// connector config has a `[cloud]` table and no `[uplink]`).
fn cloud_place(has_uplink: bool, has_cloud_table: bool) -> (&'static str, &'static str) {
    if has_cloud_table && !has_uplink {
        (CONNECTOR_CLOUD_TABLE, CONNECTOR_URL_KEY)
    } else {
        (UPLINK_TABLE, CLOUD_KEY)
    }
}

/// A connector's `[cloud]` table and its `url` key.
pub const CONNECTOR_CLOUD_TABLE: &str = "cloud";
pub const CONNECTOR_URL_KEY: &str = "url";

/// Sets the cloud's URL (`[uplink] cloud` of a hub, `[cloud] url` of a connector) and `ca_file`
/// when given, creating the table when missing. Returns the new text.
pub fn set_uplink(text: &str, cloud: &str, ca_file: Option<&str>) -> Result<String, String> {
    let mut doc = parse(text)?;
    let (table, key) = cloud_place(doc.contains_key(UPLINK_TABLE), doc.contains_key(CONNECTOR_CLOUD_TABLE));
    let uplink = doc
        .entry(table)
        .or_insert_with(|| Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| format!("`{table}` must be a table"))?;
    set_one(uplink, key, cloud);
    if let Some(ca) = ca_file {
        set_one(uplink, CA_FILE_KEY, ca);
    }
    Ok(doc.to_string())
}

fn set_one(table: &mut dyn TableLike, key: &str, new: &str) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(v) => replace_keeping_decor(v, new),
        None => {
            table.insert(key, toml_edit::value(new));
        }
    }
}

/// The `data_dir` a config names: the top-level one, else the first found in a table.
pub fn find_data_dir(config: &toml::Table) -> Option<String> {
    if let Some(dir) = config.get(DATA_DIR_KEY).and_then(toml::Value::as_str) {
        return Some(dir.to_string());
    }
    config.values().filter_map(toml::Value::as_table).find_map(find_data_dir)
}

/// The cloud's URL a config names, if set.
pub fn find_cloud(config: &toml::Table) -> Option<String> {
    let (table, key) =
        cloud_place(config.contains_key(UPLINK_TABLE), config.contains_key(CONNECTOR_CLOUD_TABLE));
    config.get(table)?.get(key)?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_is_replaced_in_place_keeping_comments() {
        let text = "# hub config\n[storage]\n# where the buffer lives\ndata_dir = \"./data\" # relative\n";
        let (out, prev) = set_data_dir(text, "/var/lib/outpost/sensorhub").unwrap();
        assert_eq!(prev.as_deref(), Some("./data"));
        assert!(out.contains("# where the buffer lives"), "{out}");
        assert!(out.contains("data_dir = \"/var/lib/outpost/sensorhub\" # relative"), "{out}");
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(find_data_dir(&parsed).as_deref(), Some("/var/lib/outpost/sensorhub"));
    }

    #[test]
    fn data_dir_is_added_at_the_top_when_absent() {
        let text = "name = \"hub\"\n\n[uplink]\ncloud = \"https://a.example\"\n";
        let (out, prev) = set_data_dir(text, "/var/lib/outpost/sensorhub").unwrap();
        assert_eq!(prev, None);
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["data_dir"].as_str(), Some("/var/lib/outpost/sensorhub"));
        assert_eq!(parsed["uplink"]["cloud"].as_str(), Some("https://a.example"));
    }

    #[test]
    fn a_connector_config_gets_its_cloud_url_in_the_cloud_table() {
        let out =
            set_uplink("data_dir = \"/x\"\n[cloud]\nmax_readings = 10\n", "https://c.example", None).unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["cloud"]["url"].as_str(), Some("https://c.example"));
        assert!(!parsed.contains_key("uplink"), "{out}");
        assert_eq!(find_cloud(&parsed).as_deref(), Some("https://c.example"));
    }

    #[test]
    fn uplink_is_created_or_updated() {
        let out = set_uplink("data_dir = \"/x\"\n", "https://c.example", Some("/etc/outpost/cloud-ca.pem"))
            .unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(find_cloud(&parsed).as_deref(), Some("https://c.example"));
        assert_eq!(parsed["uplink"]["ca_file"].as_str(), Some("/etc/outpost/cloud-ca.pem"));

        let text = "[uplink]\n# the cloud\ncloud = \"https://old.example\"\nfallback_after = \"5m\"\n";
        let out = set_uplink(text, "https://new.example", None).unwrap();
        assert!(out.contains("# the cloud\ncloud = \"https://new.example\""), "{out}");
        assert!(out.contains("fallback_after = \"5m\""), "{out}");

        let inline = set_uplink("uplink = { cloud = \"https://a\" }\n", "https://b", None).unwrap();
        let parsed: toml::Table = toml::from_str(&inline).unwrap();
        assert_eq!(find_cloud(&parsed).as_deref(), Some("https://b"));
    }

    #[test]
    fn broken_toml_is_refused() {
        assert!(set_data_dir("data_dir = ", "/x").unwrap_err().contains("not valid TOML"));
        assert!(set_uplink("uplink = 3\n", "https://b", None).unwrap_err().contains("must be a table"));
    }
}

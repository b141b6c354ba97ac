//! The fruit-information table (`data/fruit-info.csv`, embedded at build
//! time) and how a classifier label finds its row.

use serde::Serialize;

const TABLE: &str = include_str!("../data/fruit-info.csv");

/// What the info card shows about one fruit. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FruitInfo {
    /// The table's key (`apple`), also what matched the label.
    pub fruit: String,
    pub common_name: String,
    pub botanical_name: String,
    pub family: String,
    /// Energy per 100 g of the raw edible part.
    pub energy_kcal_per_100g: f32,
    /// USDA FoodData Central id the energy comes from.
    pub fdc_id: u32,
    /// That food's description in FoodData Central.
    pub fdc_food: String,
    /// Where to check the figure.
    pub source_url: String,
}

/// The whole table, parsed once.
#[derive(Debug, Clone)]
pub struct FruitTable {
    rows: Vec<FruitInfo>,
}

impl FruitTable {
    /// The table embedded in the binary.
    ///
    /// # Panics
    /// If the embedded CSV is malformed: a build defect caught by the unit
    /// tests, never a run-time input.
    pub fn embedded() -> Self {
        Self::parse(TABLE).expect("data/fruit-info.csv is well formed (unit-tested)")
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
        let (_, header) = lines.next().ok_or("no header line")?;
        let want = "fruit,common_name,botanical_name,family,energy_kcal,fdc_id,fdc_food";
        if header.trim() != want {
            return Err(format!("header is {header:?}, expected {want:?}"));
        }
        let mut rows = Vec::new();
        for (index, line) in lines {
            let at = |what: &str| format!("line {}: {what}: {line:?}", index + 1);
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [fruit, common, botanical, family, kcal, fdc_id, fdc_food] = fields[..] else {
                return Err(at("expected 7 comma-separated fields"));
            };
            if fruit.is_empty() || fruit != fruit.to_lowercase() {
                return Err(at("the fruit key must be non-empty and lower-case"));
            }
            let fdc_id: u32 = fdc_id.parse().map_err(|_| at("fdc_id is not a number"))?;
            rows.push(FruitInfo {
                fruit: fruit.to_string(),
                common_name: common.to_string(),
                botanical_name: botanical.to_string(),
                family: family.to_string(),
                energy_kcal_per_100g: kcal
                    .parse()
                    .map_err(|_| at("energy_kcal is not a number"))?,
                fdc_id,
                fdc_food: fdc_food.replace(';', ","),
                source_url: format!("https://fdc.nal.usda.gov/food-details/{fdc_id}/nutrients"),
            });
        }
        Ok(FruitTable { rows })
    }

    pub fn rows(&self) -> &[FruitInfo] {
        &self.rows
    }

    /// The row for a classifier label: the longest run of the label's
    /// leading words (numbers dropped, case ignored) that is a fruit key, so
    /// "Apple Red Yellow 1" → `apple`, "Cherry 1" → `cherry`. A key may be
    /// several words ("passion fruit"), and a trailing plural `s` is
    /// forgiven ("Apples"). `None` when nothing matches.
    pub fn lookup(&self, label: &str) -> Option<&FruitInfo> {
        let words: Vec<String> = label
            .split(|c: char| c.is_whitespace() || c == '_' || c == '-')
            .filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_lowercase)
            .collect();
        (1..=words.len()).rev().find_map(|n| {
            let key = words[..n].join(" ");
            let singular = key.strip_suffix('s').unwrap_or(&key);
            self.rows
                .iter()
                .find(|row| row.fruit == key || row.fruit == singular)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_parses_with_sources() {
        let table = FruitTable::embedded();
        assert!(table.rows().len() >= 16);
        for row in table.rows() {
            assert!(!row.common_name.is_empty() && !row.botanical_name.is_empty());
            assert!(row.family.ends_with("aceae"), "{row:?}");
            assert!(
                (10.0..=400.0).contains(&row.energy_kcal_per_100g),
                "{row:?}"
            );
            assert!(row.fdc_food.contains("raw"), "{row:?}");
        }
        assert!(TABLE.contains("FoodData Central") && TABLE.contains("GRIN"));
    }

    #[test]
    fn every_sample_label_finds_its_fruit() {
        let table = FruitTable::embedded();
        let sample = [
            ("Apple Braeburn", "apple"),
            ("Apple Golden 1", "apple"),
            ("Apple Granny Smith", "apple"),
            ("Apple Red Yellow 1", "apple"),
            ("Apricot", "apricot"),
            ("Avocado", "avocado"),
            ("Banana", "banana"),
            ("Cherry 1", "cherry"),
            ("Kiwi", "kiwi"),
            ("Lemon", "lemon"),
            ("Mango", "mango"),
            ("Orange", "orange"),
            ("Peach", "peach"),
            ("Pear", "pear"),
            ("Pineapple", "pineapple"),
            ("Plum", "plum"),
            ("Pomegranate", "pomegranate"),
            ("Raspberry", "raspberry"),
            ("Strawberry", "strawberry"),
        ];
        for (label, fruit) in sample {
            let found = table.lookup(label).map(|r| r.fruit.as_str());
            assert_eq!(found, Some(fruit), "{label}");
        }
    }

    #[test]
    fn unknown_and_odd_labels_get_nothing_and_never_panic() {
        let table = FruitTable::embedded();
        for label in ["Rambutan", "", " ", "1", "Tomato Cherry Red", "Ä", "__"] {
            assert_eq!(table.lookup(label), None, "{label:?}");
        }
        assert_eq!(table.lookup("apples").unwrap().fruit, "apple");
        assert_eq!(table.lookup("Grape White 2").unwrap().fruit, "grape");
    }

    #[test]
    fn malformed_tables_are_reported_with_the_line() {
        let header = "fruit,common_name,botanical_name,family,energy_kcal,fdc_id,fdc_food\n";
        let err = FruitTable::parse(&format!("{header}apple,Apple,x,y,52\n")).unwrap_err();
        assert!(err.contains("line 2") && err.contains("7"), "{err}");
        let err = FruitTable::parse(&format!("{header}apple,A,x,y,lots,1,z\n")).unwrap_err();
        assert!(err.contains("energy_kcal"), "{err}");
        assert!(FruitTable::parse("a,b\n").is_err());
    }
}

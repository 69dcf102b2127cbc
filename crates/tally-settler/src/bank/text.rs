//! Deterministic text cleaning for bank files.
//!
//! Names and remittance text come from payees and cannot be trusted to fit a bank's
//! character set. Each writer cleans them with a fixed table (never the locale), so the
//! same input always yields the same bytes:
//!
//! - [`sepa_text`]: the SEPA basic Latin set (`a-z A-Z 0-9 / - ? : ( ) . , ' +` and space),
//!   used for every text of a EUR `pain.001`.
//! - [`xml_text`]: any Unicode except what XML 1.0 forbids (control characters), for
//!   non-EUR `pain.001` and `pain.002`.
//! - [`ach_text`]: upper-case ASCII letters, digits, space and `- . , / & '`, for NACHA.
//!
//! Accented Latin letters lose their accents (`é` → `e`, `ß` → `ss`, `Æ` → `AE`), a few
//! punctuation marks map to an allowed neighbour, and anything else becomes `.` (SEPA,
//! NACHA) or a space (control characters in XML). Whitespace at both ends is trimmed, then
//! the result is cut to the field's length in characters.

/// The basic-Latin spelling of a Latin letter with diacritics or a ligature, or of a
/// punctuation mark that has a plain neighbour. `None` when there is no such spelling.
fn transliterate(c: char) -> Option<&'static str> {
    let plain = match c {
        'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' | 'Ā' | 'Ă' | 'Ą' => "A",
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' | 'ª' => "a",
        'Æ' => "AE",
        'æ' => "ae",
        'Ç' | 'Ć' | 'Ĉ' | 'Ċ' | 'Č' => "C",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'Ď' | 'Đ' | 'Ð' => "D",
        'ď' | 'đ' | 'ð' => "d",
        'È' | 'É' | 'Ê' | 'Ë' | 'Ē' | 'Ĕ' | 'Ė' | 'Ę' | 'Ě' => "E",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'Ĝ' | 'Ğ' | 'Ġ' | 'Ģ' => "G",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'Ĥ' | 'Ħ' => "H",
        'ĥ' | 'ħ' => "h",
        'Ì' | 'Í' | 'Î' | 'Ï' | 'Ĩ' | 'Ī' | 'Ĭ' | 'Į' | 'İ' => "I",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'Ĵ' => "J",
        'ĵ' => "j",
        'Ķ' => "K",
        'ķ' | 'ĸ' => "k",
        'Ĺ' | 'Ļ' | 'Ľ' | 'Ŀ' | 'Ł' => "L",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'Ñ' | 'Ń' | 'Ņ' | 'Ň' | 'Ŋ' => "N",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'ŉ' | 'ŋ' => "n",
        'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' | 'Ō' | 'Ŏ' | 'Ő' => "O",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' | 'º' => "o",
        'Œ' => "OE",
        'œ' => "oe",
        'Ŕ' | 'Ŗ' | 'Ř' => "R",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'Ś' | 'Ŝ' | 'Ş' | 'Š' | 'Ș' => "S",
        'ś' | 'ŝ' | 'ş' | 'š' | 'ș' | 'ſ' => "s",
        'ß' => "ss",
        'Ţ' | 'Ť' | 'Ŧ' | 'Ț' => "T",
        'ţ' | 'ť' | 'ŧ' | 'ț' => "t",
        'Þ' => "TH",
        'þ' => "th",
        'Ù' | 'Ú' | 'Û' | 'Ü' | 'Ũ' | 'Ū' | 'Ŭ' | 'Ů' | 'Ű' | 'Ų' => "U",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'Ŵ' => "W",
        'ŵ' => "w",
        'Ý' | 'Ÿ' | 'Ŷ' => "Y",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'Ź' | 'Ż' | 'Ž' => "Z",
        'ź' | 'ż' | 'ž' => "z",
        '‘' | '’' | '‚' | '‛' | '′' | '`' | '´' => "'",
        '“' | '”' | '„' | '‟' | '″' | '«' | '»' => "'",
        '‐' | '‑' | '‒' | '–' | '—' | '―' | '−' => "-",
        '\u{a0}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{3000}' => " ",
        _ => return None,
    };
    Some(plain)
}

/// Characters of the SEPA basic Latin set (EPC guidance on the character set).
pub(crate) fn is_sepa_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '?' | ':' | '(' | ')' | '.' | ',' | '\'' | '+' | ' ')
}

/// Characters allowed in NACHA alphanumeric fields, before upper-casing (ASCII only).
fn is_ach_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '.' | ',' | '/' | '&' | '\'')
}

/// Cuts `s` to at most `chars_max` characters, then trims whitespace at both ends.
fn finish(s: &str, chars_max: usize) -> String {
    let trimmed = s.trim();
    let cut: String = trimmed.chars().take(chars_max).collect();
    cut.trim_end().to_string()
}

/// Maps every character through `keep` (kept as is), the transliteration table, or
/// `fallback`, and appends to `out`. ASCII control characters and line breaks become a space.
fn map_chars(input: &str, out: &mut String, keep: impl Fn(char) -> bool, fallback: char) {
    for c in input.chars() {
        if keep(c) {
            out.push(c);
        } else if c.is_whitespace() || c.is_control() {
            out.push(' ');
        } else if let Some(plain) = transliterate(c) {
            for p in plain.chars() {
                out.push(if keep(p) { p } else { fallback });
            }
        } else {
            let mapped = match c {
                '&' => '+',
                '_' | '~' => '-',
                '"' => '\'',
                _ => fallback,
            };
            out.push(if keep(mapped) { mapped } else { fallback });
        }
    }
}

/// SEPA basic Latin, trimmed, at most `chars_max` characters.
pub(crate) fn sepa_text(input: &str, chars_max: usize) -> String {
    let mut out = String::with_capacity(input.len());
    map_chars(input, &mut out, is_sepa_char, '.');
    finish(&out, chars_max)
}

/// Any Unicode allowed by XML 1.0 (control characters become spaces), trimmed, at most
/// `chars_max` characters. Markup characters are escaped later by the XML writer.
pub(crate) fn xml_text(input: &str, chars_max: usize) -> String {
    let cleaned: String =
        input.chars().map(|c| if c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}') { ' ' } else { c }).collect();
    finish(&cleaned, chars_max)
}

/// NACHA alphanumeric text: upper-case ASCII, trimmed, at most `chars_max` characters.
pub(crate) fn ach_text(input: &str, chars_max: usize) -> String {
    let mut out = String::with_capacity(input.len());
    map_chars(input, &mut out, is_ach_char, '.');
    finish(&out.to_ascii_uppercase(), chars_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sepa_transliterates_deterministically() {
        assert_eq!(sepa_text("Müller & Söhne GmbH", 140), "Muller + Sohne GmbH");
        assert_eq!(sepa_text("Straße Øresund Æsir", 140), "Strasse Oresund AEsir");
        assert_eq!(sepa_text("  Zoë <b>\"x\"</b>  ", 140), "Zoe .b.'x'./b.");
        assert_eq!(sepa_text("李小龍", 140), "...");
        assert_eq!(sepa_text("a\nb\tc", 140), "a b c");
        assert_eq!(sepa_text("Łódź—Kraków", 140), "Lodz-Krakow");
        assert_eq!(sepa_text("abc def", 4), "abc");
        assert!(sepa_text("Ærø ßß ﬁ @ # $ % ^ * = [ ] { } | ; ! é", 140).chars().all(is_sepa_char));
    }

    #[test]
    fn xml_text_keeps_unicode_and_drops_controls() {
        assert_eq!(xml_text("Zoë \u{0}<李>", 140), "Zoë  <李>");
        assert_eq!(xml_text("ééé", 2), "éé");
    }

    #[test]
    fn ach_text_is_upper_case_ascii() {
        assert_eq!(ach_text("José Núñez", 22), "JOSE NUNEZ");
        assert_eq!(ach_text("acme_co; llc", 22), "ACME-CO. LLC");
        assert_eq!(ach_text("a very long name that does not fit", 22), "A VERY LONG NAME THAT");
        assert!(ach_text("ß ø ™ ~ ` $ @ ! 李 ĸ", 40).chars().all(|c| is_ach_char(c) && !c.is_ascii_lowercase()));
    }
}

//! Per-format conversion of one parsed JSON record into the unified types.

use serde_json::Value;

use super::error::RecordProblem;
use super::fields::Obj;
use super::format::{Format, ZsreTarget};
use super::records::{
    check_nonempty, check_template, EvalRecord, Hop, KnownFact, MquakeCase, MquakeEdit,
    Portability, Probe, Rewrite, ZsreInfo,
};

type Result<T> = std::result::Result<T, RecordProblem>;

/// One converted record (short-lived: moved into its `Vec` at once, so size does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Item {
    Edit(EvalRecord),
    Known(KnownFact),
    Mquake(MquakeCase),
}

/// Converts the record at `index` of a file in `format`.
pub(crate) fn convert(
    format: Format,
    index: usize,
    value: &Value,
    zsre_target: ZsreTarget,
) -> Result<Item> {
    let obj = Obj::root(value)?;
    Ok(match format {
        Format::CounterFact => Item::Edit(counterfact(&obj, index)?),
        Format::EasyEdit => Item::Edit(easyedit(&obj, index)?),
        Format::Zsre => Item::Edit(zsre(&obj, index, zsre_target)?),
        Format::Facts => Item::Edit(facts(&obj, index)?),
        Format::Known => Item::Known(known(&obj, index)?),
        Format::Mquake => Item::Mquake(mquake(&obj, index)?),
    })
}

fn record(index: usize, rewrite: Rewrite) -> EvalRecord {
    EvalRecord {
        index,
        rewrite,
        paraphrase_prompts: Vec::new(),
        neighborhood: Vec::new(),
        attribute: Vec::new(),
        generation_prompts: Vec::new(),
        locality: Vec::new(),
        zsre: None,
    }
}

fn probes(prompts: Vec<String>, target: &str) -> Vec<Probe> {
    prompts
        .into_iter()
        .map(|prompt| Probe {
            prompt,
            target: target.to_string(),
        })
        .collect()
}

/// A CounterFact-style rewrite object: `prompt` (template), `subject`, `target_new`,
/// `target_true`, `relation_id`.
fn rewrite_object(obj: &Obj<'_>, case_id: Option<String>) -> Result<Rewrite> {
    let prompt = obj.req_str("prompt")?;
    check_template(&obj.path("prompt"), prompt)?;
    Ok(Rewrite {
        subject: obj.req_text("subject")?.to_string(),
        prompt: prompt.to_string(),
        target_new: obj.req_target("target_new")?,
        target_true: obj.opt_target("target_true")?,
        case_id,
        relation_id: obj.opt_str("relation_id")?.map(str::to_string),
    })
}

/// Cuts the first occurrence of `subject` out of `text` (field `field`), leaving `{}`.
fn template_from(field: &str, text: &str, subject: &str) -> Result<String> {
    match text.find(subject) {
        Some(at) => {
            let template = format!("{}{{}}{}", &text[..at], &text[at + subject.len()..]);
            check_template(field, &template)?;
            Ok(template)
        }
        None => Err(RecordProblem::SubjectNotFound {
            field: field.to_string(),
            subject: subject.to_string(),
            text: text.to_string(),
        }),
    }
}

fn counterfact(obj: &Obj<'_>, index: usize) -> Result<EvalRecord> {
    let case_id = obj.opt_id("case_id")?;
    let rr = obj.req("requested_rewrite")?;
    let rr = match rr {
        Value::Array(items) if items.len() == 1 => {
            Obj::nested(&items[0], obj.path("requested_rewrite[0]"))?
        }
        Value::Array(items) => return Err(RecordProblem::RewriteCount { count: items.len() }),
        other => Obj::nested(other, obj.path("requested_rewrite"))?,
    };
    let rewrite = rewrite_object(&rr, case_id)?;
    let neighborhood = obj.prompt_list("neighborhood_prompts")?;
    let target_true = match (&rewrite.target_true, neighborhood.is_empty()) {
        (Some(t), _) => t.clone(),
        (None, true) => String::new(),
        (None, false) => {
            return Err(RecordProblem::Missing {
                field: rr.path("target_true"),
            })
        }
    };
    let mut rec = record(index, rewrite);
    rec.paraphrase_prompts = obj.prompt_list("paraphrase_prompts")?;
    rec.neighborhood = probes(neighborhood, &target_true);
    rec.attribute = probes(
        obj.prompt_list("attribute_prompts")?,
        &rec.rewrite.target_new,
    );
    rec.generation_prompts = obj.prompt_list("generation_prompts")?;
    Ok(rec)
}

fn easyedit(obj: &Obj<'_>, index: usize) -> Result<EvalRecord> {
    let subject = obj.req_text("subject")?;
    let prompt = template_from(&obj.path("prompt"), obj.req_str("prompt")?, subject)?;
    let rewrite = Rewrite {
        subject: subject.to_string(),
        prompt,
        target_new: obj.req_target("target_new")?,
        target_true: obj.opt_target("ground_truth")?,
        case_id: obj.opt_id("case_id")?,
        relation_id: obj.opt_str("relation_id")?.map(str::to_string),
    };
    let mut rec = record(index, rewrite);
    if let Some(rephrase) = obj.str_or_list("rephrase_prompt")? {
        for (i, p) in rephrase.iter().enumerate() {
            check_nonempty(&format!("{}[{i}]", obj.path("rephrase_prompt")), p)?;
        }
        rec.paraphrase_prompts = rephrase;
    }
    let loc_prompt = obj.opt_str("locality_prompt")?;
    let loc_truth = obj.str_or_list("locality_ground_truth")?;
    match (loc_prompt, loc_truth) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(RecordProblem::Missing {
                field: obj.path("locality_ground_truth"),
            })
        }
        (None, Some(_)) => {
            return Err(RecordProblem::Missing {
                field: obj.path("locality_prompt"),
            })
        }
        (Some(prompt), Some(truths)) => {
            check_nonempty(&obj.path("locality_prompt"), prompt)?;
            let field = obj.path("locality_ground_truth");
            let first = truths.first().ok_or_else(|| RecordProblem::Empty {
                field: field.clone(),
            })?;
            check_nonempty(&field, first)?;
            rec.neighborhood = vec![Probe {
                prompt: prompt.to_string(),
                target: first.trim().to_string(),
            }];
        }
    }
    Ok(rec)
}

fn zsre(obj: &Obj<'_>, index: usize, target: ZsreTarget) -> Result<EvalRecord> {
    let subject = obj.req_text("subject")?;
    let prompt = template_from(&obj.path("src"), obj.req_str("src")?, subject)?;
    let answers_field = obj.path("answers");
    if !obj.has("answers") {
        return Err(RecordProblem::Missing {
            field: answers_field,
        });
    }
    let answers: Vec<String> = obj
        .str_list("answers")?
        .into_iter()
        .map(|a| a.trim().to_string())
        .collect();
    let first = answers.first().ok_or_else(|| RecordProblem::Empty {
        field: answers_field.clone(),
    })?;
    check_nonempty(&format!("{answers_field}[0]"), first)?;
    let alt = obj.opt_str("alt")?.map(|a| a.trim().to_string());
    let (target_new, target_true) = match target {
        ZsreTarget::Answers0 => (first.clone(), None),
        ZsreTarget::Alt => {
            let alt = alt.clone().ok_or_else(|| RecordProblem::Missing {
                field: obj.path("alt"),
            })?;
            check_nonempty(&obj.path("alt"), &alt)?;
            (alt, Some(first.clone()))
        }
    };
    let portability = match obj.get("portability") {
        None => None,
        Some(v) => {
            let p = Obj::nested(v, obj.path("portability"))?;
            Some(Portability {
                recalled_relation: p.req_str("Recalled Relation")?.to_string(),
                new_question: p.req_text("New Question")?.to_string(),
                new_answer: p.req_target("New Answer")?,
            })
        }
    };
    let case_id = obj.opt_id("case_id")?.unwrap_or_else(|| index.to_string());
    let rewrite = Rewrite {
        subject: subject.to_string(),
        prompt,
        target_new,
        target_true,
        case_id: Some(case_id),
        relation_id: obj.opt_str("relation_id")?.map(str::to_string),
    };
    let mut rec = record(index, rewrite);
    rec.paraphrase_prompts = vec![obj.req_text("rephrase")?.to_string()];
    rec.locality = vec![Probe {
        prompt: obj.req_text("loc")?.to_string(),
        target: obj.req_target("loc_ans")?,
    }];
    rec.zsre = Some(ZsreInfo {
        answers,
        alt,
        pred: obj.opt_str("pred")?.map(str::to_string),
        cond: obj.opt_str("cond")?.map(str::to_string),
        portability,
    });
    Ok(rec)
}

/// Fields of our own facts format.
const FACT_FIELDS: [&str; 11] = [
    "subject",
    "prompt",
    "target_new",
    "target_true",
    "case_id",
    "relation_id",
    "paraphrases",
    "paraphrase_prompts",
    "neighbourhood",
    "neighborhood",
    "generation_prompts",
];

/// `new` if present, else the alias `old`; both present is an error.
fn either<'k>(obj: &Obj<'_>, new: &'k str, old: &'k str) -> Result<&'k str> {
    if obj.has(new) && obj.has(old) {
        return Err(RecordProblem::Duplicate {
            field: obj.path(new),
            alias: obj.path(old),
        });
    }
    Ok(if obj.has(old) { old } else { new })
}

fn facts(obj: &Obj<'_>, index: usize) -> Result<EvalRecord> {
    obj.deny_unknown(&FACT_FIELDS)?;
    let rewrite = rewrite_object(obj, obj.opt_id("case_id")?)?;
    let mut rec = record(index, rewrite);
    rec.paraphrase_prompts = obj.prompt_list(either(obj, "paraphrases", "paraphrase_prompts")?)?;
    for n in obj.obj_list(either(obj, "neighbourhood", "neighborhood")?)? {
        n.deny_unknown(&["prompt", "target"])?;
        rec.neighborhood.push(Probe {
            prompt: n.req_text("prompt")?.to_string(),
            target: n.req_target("target")?,
        });
    }
    rec.generation_prompts = obj.prompt_list("generation_prompts")?;
    Ok(rec)
}

fn known(obj: &Obj<'_>, index: usize) -> Result<KnownFact> {
    let subject = obj.req_text("subject")?.to_string();
    let template = obj.req_str("template")?;
    check_template(&obj.path("template"), template)?;
    let tracing_prompt = match obj.opt_str("prompt")? {
        Some(p) => p.to_string(),
        None => template.replacen("{}", &subject, 1),
    };
    Ok(KnownFact {
        index,
        case_id: obj.opt_id("known_id")?,
        subject,
        prompt: template.to_string(),
        target_true: obj.req_target("attribute")?,
        tracing_prompt,
        prediction: obj.opt_str("prediction")?.map(str::to_string),
        relation_id: obj.opt_str("relation_id")?.map(str::to_string),
    })
}

fn hops(obj: &Obj<'_>, key: &str) -> Result<Vec<Hop>> {
    obj.obj_list(key)?
        .iter()
        .map(|h| {
            Ok(Hop {
                question: h.req_text("question")?.to_string(),
                cloze: h.req_text("cloze")?.to_string(),
                answer: h.req_target("answer")?,
                answer_alias: h.str_list("answer_alias")?,
            })
        })
        .collect()
}

fn mquake(obj: &Obj<'_>, index: usize) -> Result<MquakeCase> {
    let case_id = obj.opt_id("case_id")?;
    let rr = obj.req("requested_rewrite")?;
    let rewrites: Vec<Obj<'_>> = match rr {
        Value::Array(_) => obj.obj_list("requested_rewrite")?,
        other => vec![Obj::nested(other, obj.path("requested_rewrite"))?],
    };
    if rewrites.is_empty() {
        return Err(RecordProblem::Empty {
            field: obj.path("requested_rewrite"),
        });
    }
    let edits = rewrites
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let id = case_id.as_ref().map(|c| format!("{c}/{k}"));
            Ok(MquakeEdit {
                rewrite: rewrite_object(r, id)?,
                question: r.opt_str("question")?.map(str::to_string),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(MquakeCase {
        index,
        case_id,
        edits,
        questions: obj.prompt_list("questions")?,
        answer: obj.req_target("answer")?,
        answer_alias: obj.str_list("answer_alias")?,
        new_answer: obj.req_target("new_answer")?,
        new_answer_alias: obj.str_list("new_answer_alias")?,
        single_hops: hops(obj, "single_hops")?,
        new_single_hops: hops(obj, "new_single_hops")?,
    })
}

//! Job templates: Open Job Description 2023-09, parsed and validated by `openjd-model`,
//! instantiated with parameter values, and expanded into tasks.
//!
//! A step's parameter space (every combination of its task parameters; a `CHUNK[INT]`
//! parameter groups frames into chunks) becomes its tasks; step dependencies are kept by name
//! so the scheduler can hold a step until the ones it depends on are done.

use openjd_expr::format_string::FormatStringOptions;
use openjd_expr::path_mapping::PathFormat;
use openjd_expr::symbol_table::SymbolTable;
use openjd_expr::ExprValue;
use openjd_model::template::parse::document_string_to_object;
use openjd_model::template::JobTemplate;
use openjd_model::{
    create_job, decode_job_template, preprocess_job_parameters, CallerLimits, DocumentType,
    JobParameterInputValues, PathParameterOptions, StepParameterSpaceIterator,
};

/// The extensions templates may use: frame chunks and expressions.
pub const EXTENSIONS: &[&str] = &["TASK_CHUNKING", "EXPR"];

/// Why a template or its parameters were refused. The message is the validator's, with the
/// location of each problem in the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The document is not a valid template.
    #[error("invalid job template: {0}")]
    Invalid(String),
    /// The parameter values do not fit the template.
    #[error("invalid job parameters: {0}")]
    Parameters(String),
    /// The job could not be expanded into tasks.
    #[error("cannot expand the job: {0}")]
    Expand(String),
    /// The template uses a part of Open Job Description this farm does not run.
    #[error("not supported by this farm: {0}")]
    Unsupported(String),
}

/// A parsed, validated template.
#[derive(Debug, Clone)]
pub struct Template {
    inner: JobTemplate,
}

/// One task: the values of its step's task parameters (a chunk of frames is a range
/// expression such as `1-5`) and the command line its `onRun` action resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// Parameter name and value, in the template's order.
    pub params: Vec<(String, String)>,
    /// The command and its arguments, every format string resolved. Relative paths are
    /// relative to the task's working directory (`Session.WorkingDirectory` is `.`).
    pub argv: Vec<String>,
}

/// One step of a job with its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    /// The step's name.
    pub name: String,
    /// Steps that must finish first.
    pub depends_on: Vec<String>,
    /// Its tasks (one when the step has no parameter space).
    pub tasks: Vec<TaskSpec>,
}

/// A job instantiated from a template: what the farm queues.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The job's name (after substitution).
    pub name: String,
    /// The steps, in the template's order.
    pub steps: Vec<StepSpec>,
}

impl Template {
    /// Parses and validates a template (YAML or JSON; JSON is YAML).
    pub fn parse(document: &str) -> Result<Self, TemplateError> {
        let limits = CallerLimits::default();
        let value = document_string_to_object(document, DocumentType::Yaml, &limits)
            .map_err(|e| TemplateError::Invalid(e.to_string()))?;
        let inner = decode_job_template(value, Some(EXTENSIONS), &limits)
            .map_err(|e| TemplateError::Invalid(e.to_string()))?;
        Ok(Self { inner })
    }

    /// The names of the template's job parameters.
    pub fn parameter_names(&self) -> Vec<String> {
        self.inner
            .parameter_definitions
            .iter()
            .flatten()
            .map(|p| p.name().to_owned())
            .collect()
    }

    /// Instantiates the job with `values` (`name`, text as typed on a command line; the
    /// template's defaults fill the rest), with relative paths taken from `dir`, and expands
    /// its steps into tasks.
    pub fn instantiate(
        &self,
        values: &[(String, String)],
        dir: &str,
    ) -> Result<JobSpec, TemplateError> {
        let known = self.parameter_names();
        if let Some((k, _)) = values.iter().find(|(k, _)| !known.contains(k)) {
            return Err(TemplateError::Parameters(format!(
                "unknown parameter '{k}'; the template has {}",
                known.join(", ")
            )));
        }
        let mut input = JobParameterInputValues::new();
        for (k, v) in values {
            input.insert(k.clone(), ExprValue::String(v.clone()));
        }
        let params = preprocess_job_parameters(
            &self.inner,
            &input,
            &[],
            &PathParameterOptions {
                job_template_dir: dir,
                current_working_dir: dir,
                path_format: PathFormat::Posix,
                allow_template_dir_walk_up: true,
                allow_uri_path_values: false,
            },
        )
        .map_err(|e| TemplateError::Parameters(e.to_string()))?;
        let job = create_job(
            &self.inner,
            &params,
            &self.inner.default_validation_context(),
        )
        .map_err(|e| TemplateError::Parameters(e.to_string()))?;
        // What this farm does not run: refused, not ignored.
        fn refuse<T>(
            list: &Option<Vec<T>>,
            what: impl FnOnce() -> String,
        ) -> Result<(), TemplateError> {
            match list {
                Some(l) if !l.is_empty() => Err(TemplateError::Unsupported(what())),
                _ => Ok(()),
            }
        }
        refuse(&job.job_environments, || "job environments".into())?;
        let opts = FormatStringOptions::default().with_path_format(PathFormat::Posix);
        let mut steps = Vec::new();
        for step in &job.steps {
            refuse(&step.step_environments, || {
                format!("step '{}': step environments", step.name)
            })?;
            refuse(&step.script.embedded_files, || {
                format!("step '{}': embedded files", step.name)
            })?;
            let action = &step.script.actions.on_run;
            let mut base = match &step.resolved_symtab {
                Some(t) => t
                    .to_symtab(PathFormat::Posix)
                    .map_err(TemplateError::Expand)?,
                None => SymbolTable::new(),
            };
            base.set_string("Session.WorkingDirectory", ".")
                .map_err(|e| TemplateError::Expand(e.to_string()))?;
            let resolve = |values: &[(String, ExprValue)]| -> Result<Vec<String>, TemplateError> {
                let mut symtab = base.clone();
                for (k, v) in values {
                    for scope in ["Task.Param", "Task.RawParam"] {
                        symtab
                            .set(&format!("{scope}.{k}"), v.clone())
                            .map_err(|e| TemplateError::Expand(e.to_string()))?;
                    }
                }
                std::iter::once(&action.command)
                    .chain(action.args.iter().flatten())
                    .map(|f| {
                        f.resolve_string_with(&symtab, &opts).map_err(|e| {
                            TemplateError::Expand(format!("step '{}': {e}", step.name))
                        })
                    })
                    .collect()
            };
            let tasks = match &step.parameter_space {
                None => vec![TaskSpec {
                    params: Vec::new(),
                    argv: resolve(&[])?,
                }],
                Some(space) => StepParameterSpaceIterator::new(space)
                    .map_err(|e| TemplateError::Expand(e.to_string()))?
                    .map(|set| {
                        let values: Vec<(String, ExprValue)> = set
                            .iter()
                            .map(|(k, v)| (k.clone(), v.value.clone()))
                            .collect();
                        Ok(TaskSpec {
                            params: values
                                .iter()
                                .map(|(k, v)| (k.clone(), v.to_display_string()))
                                .collect(),
                            argv: resolve(&values)?,
                        })
                    })
                    .collect::<Result<_, TemplateError>>()?,
            };
            steps.push(StepSpec {
                name: step.name.clone(),
                depends_on: step
                    .dependencies
                    .iter()
                    .flatten()
                    .map(|d| d.depends_on.clone())
                    .collect(),
                tasks,
            });
        }
        Ok(JobSpec {
            name: job.name,
            steps,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const RENDER: &str = r#"
specificationVersion: jobtemplate-2023-09
extensions: [TASK_CHUNKING]
name: "Render {{Param.Scene}}"
parameterDefinitions:
  - name: Scene
    type: STRING
  - name: Frames
    type: STRING
    default: "1-10"
  - name: Chunk
    type: INT
    default: 5
steps:
  - name: Render
    parameterSpace:
      taskParameterDefinitions:
        - name: Frame
          type: CHUNK[INT]
          range: "{{Param.Frames}}"
          chunks:
            defaultTaskCount: "{{Param.Chunk}}"
            rangeConstraint: CONTIGUOUS
    script:
      actions:
        onRun:
          command: echo
          args: ["{{Task.Param.Frame}}"]
  - name: Assemble
    dependencies:
      - dependsOn: Render
    script:
      actions:
        onRun:
          command: echo
          args: ["done"]
"#;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn frames_are_chunked_into_tasks_and_dependencies_kept() {
        let t = Template::parse(RENDER).unwrap();
        assert_eq!(t.parameter_names(), ["Scene", "Frames", "Chunk"]);
        let job = t
            .instantiate(&[p("Scene", "shot.blend"), p("Frames", "1-12")], "/tmp")
            .unwrap();
        assert_eq!(job.name, "Render shot.blend");
        let render = &job.steps[0];
        let frames: Vec<&str> = render
            .tasks
            .iter()
            .map(|t| t.params[0].1.as_str())
            .collect();
        // At most 5 frames a task, spread evenly (OpenJD's contiguous chunking): 3 tasks.
        assert_eq!(frames, ["1-4", "5-8", "9-12"]);
        assert_eq!(render.tasks[0].params[0].0, "Frame");
        assert_eq!(render.tasks[1].argv, ["echo", "5-8"]);
        let assemble = &job.steps[1];
        assert_eq!(assemble.depends_on, ["Render"]);
        assert_eq!(assemble.tasks.len(), 1);
    }

    #[test]
    fn the_chunk_size_is_a_parameter() {
        let t = Template::parse(RENDER).unwrap();
        let job = t
            .instantiate(
                &[p("Scene", "s"), p("Frames", "1-4"), p("Chunk", "1")],
                "/tmp",
            )
            .unwrap();
        assert_eq!(job.steps[0].tasks.len(), 4);
    }

    #[test]
    fn invalid_templates_get_the_validators_errors_with_locations() {
        let bad = RENDER.replace(
            "command: echo\n          args: [\"{{Task.Param.Frame}}\"]",
            "command: echo\n          args: [\"{{Task.Param.Nope}}\"]",
        );
        let e = Template::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("Nope"), "{e}");
        assert!(e.contains("steps[0]"), "the location is named: {e}");
        let e = Template::parse("specificationVersion: jobtemplate-2023-09\nname: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps"), "{e}");
        let e = Template::parse("not: [a template").unwrap_err().to_string();
        assert!(e.contains("YAML"), "{e}");
        let e = Template::parse("specificationVersion: jobtemplate-1999-01\nname: x\nsteps: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1999"), "{e}");
    }

    #[test]
    fn bad_parameter_values_are_refused_by_name() {
        let t = Template::parse(RENDER).unwrap();
        let e = t.instantiate(&[], "/tmp").unwrap_err().to_string();
        assert!(e.contains("Scene"), "a required parameter is named: {e}");
        let e = t
            .instantiate(&[p("Scene", "s"), p("Chunk", "many")], "/tmp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Chunk"), "{e}");
        let e = t
            .instantiate(&[p("Scene", "s"), p("Frames", "10-1x")], "/tmp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("10-1x") || e.contains("range"), "{e}");
    }
}

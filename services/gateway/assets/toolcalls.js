// Short words for a tool call, as shown on its chip: "added #4 Buy milk",
// "completed #1 Buy milk", "listed 3 tasks", "task #9 not found". The result shapes are
// the reference app's: {task_id, status, title}, {tasks, count, filter}, {error, task_id}.

const PAST = {
  created: "added",
  completed: "completed",
  deleted: "deleted",
  updated: "updated",
};

const DO = {
  add_task: "add",
  complete_task: "complete",
  delete_task: "delete",
  update_task: "update",
  list_tasks: "list",
};

const DOING = {
  add_task: "adding",
  complete_task: "completing",
  delete_task: "deleting",
  update_task: "updating",
  list_tasks: "listing",
};

function taskRef(id) {
  if (id === undefined || id === null || id === "") return "";
  return `#${String(id).replace(/^#/, "")}`;
}

function argsOf(args) {
  return args && typeof args === "object" ? args : {};
}

/**
 * The chip of a call that has not finished yet.
 * @returns {{text: string, kind: "pending"}}
 */
export function describeStarted(name, args) {
  const a = argsOf(args);
  const doing = DOING[name] || `running ${name}`;
  let text;
  if (name === "add_task") text = a.title ? `${doing} “${a.title}”` : doing;
  else if (name === "list_tasks") text = a.status && a.status !== "all" ? `listing ${a.status} tasks` : "listing tasks";
  else text = a.task_id !== undefined ? `${doing} ${taskRef(a.task_id)}` : doing;
  return { text: `${text}…`, kind: "pending" };
}

/**
 * The chip of a finished call.
 * @returns {{text: string, kind: "ok" | "error"}}
 */
export function describeFinished(name, args, result) {
  const a = argsOf(args);
  const r = result && typeof result === "object" ? result : {};

  if (typeof r.error === "string") {
    const id = r.task_id ?? a.task_id;
    if (/not found/i.test(r.error) && id !== undefined) {
      return { text: `task ${taskRef(id)} not found`, kind: "error" };
    }
    const target = id !== undefined ? ` ${taskRef(id)}` : name === "list_tasks" ? " tasks" : "";
    return { text: `could not ${DO[name] || `run ${name}`}${target}: ${r.error}`, kind: "error" };
  }

  if (Array.isArray(r.tasks)) {
    const count = typeof r.count === "number" ? r.count : r.tasks.length;
    const filter = r.filter && r.filter !== "all" ? `${r.filter} ` : "";
    return { text: `listed ${count} ${filter}${count === 1 ? "task" : "tasks"}`, kind: "ok" };
  }

  if (typeof r.status === "string") {
    const verb = PAST[r.status] || r.status;
    const ref = taskRef(r.task_id ?? a.task_id);
    const title = r.title ? ` ${r.title}` : "";
    return { text: `${verb} ${ref}${title}`.trim(), kind: "ok" };
  }

  return { text: `${name} done`, kind: "ok" };
}

/** A one-line technical description for the chip's tooltip. */
export function describeRaw(name, args, result) {
  const parts = [`${name}(${JSON.stringify(args ?? {})})`];
  if (result !== undefined) parts.push(`→ ${JSON.stringify(result)}`);
  return parts.join(" ");
}

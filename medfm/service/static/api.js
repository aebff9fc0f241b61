// The API reference, rendered from /api/openapi.json (Swagger UI would need a CDN this machine cannot reach).
"use strict";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) return spec.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function typeOf(schema) {
  if (schema.anyOf) return schema.anyOf.map(typeOf).filter((t) => t !== "null").join(" | ");
  if (schema.enum) return schema.enum.join(" | ");
  if (schema.format === "binary") return "file";
  return [schema.type, schema.format].filter(Boolean).join(", ") || "object";
}

function parameterRows(spec, operation) {
  const rows = (operation.parameters || []).map((p) => [p.name, p.in, typeOf(resolve(spec, p.schema)), p.required]);
  const form = operation.requestBody && operation.requestBody.content["multipart/form-data"];
  if (form) {
    const schema = resolve(spec, form.schema);
    for (const [name, field] of Object.entries(schema.properties || {})) {
      rows.push([name, "form", typeOf(field), (schema.required || []).includes(name), field.description]);
    }
  }
  return rows;
}

function endpoint(spec, path, method, operation) {
  const section = element("section", "panel");
  section.append(element("h2", "", `${method.toUpperCase()} ${path}`));
  section.append(element("p", "", operation.description || operation.summary || ""));
  if (operation.security) section.append(element("p", "subtle", "Needs Authorization: Bearer <token>."));
  const rows = parameterRows(spec, operation);
  if (rows.length) {
    const table = element("dl", "meta");
    for (const [name, where, type, required, description] of rows) {
      table.append(element("dt", "", `${name} (${where}${required ? ", required" : ""})`),
        element("dd", "", [type, description].filter(Boolean).join(" — ")));
    }
    section.append(table);
  }
  return section;
}

document.addEventListener("DOMContentLoaded", async () => {
  const spec = await (await fetch("/api/openapi.json")).json();
  document.querySelector("#description").textContent = `${spec.info.title} ${spec.info.version}. ${spec.info.description}`;
  const list = document.querySelector("#endpoints");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) list.append(endpoint(spec, path, method, operation));
  }
});

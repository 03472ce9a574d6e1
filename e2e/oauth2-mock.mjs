// An OAuth2 server the project did not write (npm oauth2-mock-server), for the test of a
// provider run from its definition. Prints its issuer URL on the first line of stdout and
// runs until stdin closes.
//
// One behaviour is added: a refresh with a refresh token that starts with "revoked-" is
// answered like a provider whose user revoked the app (400 invalid_grant with its own
// description), which the test's definition classifies with a rule.

import { OAuth2Server } from "oauth2-mock-server";

const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");
server.service.on("beforeResponse", (response, req) => {
  const body = req.body ?? {};
  if (body.grant_type === "refresh_token" && String(body.refresh_token).startsWith("revoked-")) {
    response.statusCode = 400;
    response.body = {
      error: "invalid_grant",
      error_description: "Token has been revoked by the user",
    };
  }
});
await server.start(0, "127.0.0.1");
console.log(server.issuer.url);
process.stdin.resume();
process.stdin.on("end", async () => {
  await server.stop();
  process.exit(0);
});

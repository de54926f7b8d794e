// Which data plane a server belongs to (servers.data_plane_id; NULL means the default one).
import type { Queryable } from "../../store/index.js";

/** The server's data plane id, null for the default plane, undefined if the server is unknown. */
export async function dataPlaneOfServer(
  q: Queryable,
  organizationId: string,
  serverId: string,
): Promise<string | null | undefined> {
  const { rows } = await q.query<{ data_plane_id: string | null }>(
    "SELECT data_plane_id FROM servers WHERE id = $1 AND organization_id = $2",
    [serverId, organizationId],
  );
  return rows[0] ? rows[0].data_plane_id : undefined;
}
